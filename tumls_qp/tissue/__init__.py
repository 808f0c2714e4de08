"""The tissue level, in the order the data flows: tiles, embeddings, clusters, representatives."""
