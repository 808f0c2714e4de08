"""A small graph neural network that partitions a tile graph by modularity (UnSeGArmaNet, in plain torch).

Reddy et al., "UnSeGArmaNet: Unsupervised image segmentation using graph neural networks with
convolutional ARMA filters" (BMVC 2024), as the CDAC study (seed 002) applies it to patches:

- **ARMA convolution** (Bianchi et al., "Graph neural networks with convolutional ARMA filters",
  TPAMI 2021): K parallel stacks, each iterating T times
  ``X⁽ᵗ⁺¹⁾ = ReLU(Â X⁽ᵗ⁾ W⁽ᵗ⁾ + X V)`` with ``Â = D^-½ A D^-½``, ``W⁽⁰⁾`` mapping the input to
  the hidden size and ``W⁽ᵗ⁾`` shared for t ≥ 1 (as PyTorch Geometric's ``ARMAConv`` with
  shared weights); the stacks are averaged.
- **Head**: two fully connected layers (hidden → hidden, ReLU, hidden → k) and a softmax: C,
  the soft assignment of every node to k clusters.
- **Modularity loss** (DMoN, Tsitsulin et al., JMLR 2023, the loss UnSeGArmaNet trains with):
  ``−Tr(Cᵀ B C) / 2m + (√k / n) ‖Σᵢ Cᵢ‖ − 1`` with B = A − d dᵀ / 2m the modularity matrix:
  the first term rewards edges inside clusters beyond chance, the second (collapse
  regularisation) penalises putting every node in one cluster.

Full-batch Adam on the whole graph; the network runs on the CPU (it is small: a slide's tile
graph has at most a few hundred thousand nodes with ~8 edges each). Graphs below
``SINGLE_THREAD_NODES`` nodes train on one thread: there, torch's thread pool costs more than
it saves (on a busy 2-core machine two threads ran 3-5x slower than one).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["ArmaConv", "GraphPartitioner", "modularity_loss", "train_graph_partition", "SINGLE_THREAD_NODES"]

#: Graphs with fewer nodes train on one CPU thread.
SINGLE_THREAD_NODES = 20_000


class ArmaConv(nn.Module):
    """ARMA graph convolution with K stacks of T iterations (shared weights after the first)."""

    def __init__(self, in_features: int, out_features: int, stacks: int = 2, iterations: int = 2) -> None:
        super().__init__()
        self.stacks, self.iterations, self.out_features = stacks, iterations, out_features
        self.initial = nn.Linear(in_features, stacks * out_features, bias=False)
        self.root = nn.Linear(in_features, stacks * out_features)
        self.weight = nn.Parameter(torch.empty(stacks, out_features, out_features))
        nn.init.xavier_uniform_(self.weight.view(-1, out_features))

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        root = self.root(x).view(n, self.stacks, self.out_features)
        out = self.initial(x).view(n, self.stacks, self.out_features)
        for t in range(self.iterations):
            if t > 0:
                out = torch.einsum("nkf,kfg->nkg", out, self.weight)
            out = torch.sparse.mm(adjacency, out.reshape(n, -1)).view(n, self.stacks, self.out_features)
            out = torch.relu(out + root)
        return out.mean(dim=1)


class GraphPartitioner(nn.Module):
    """ARMA convolution, then two fully connected layers and a softmax over k clusters."""

    def __init__(self, in_features: int, k: int, hidden: int = 64, stacks: int = 2, iterations: int = 2) -> None:
        super().__init__()
        self.conv = ArmaConv(in_features, hidden, stacks, iterations)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, k))

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.conv(x, adjacency)), dim=1)


def modularity_loss(assignment: torch.Tensor, adjacency: torch.Tensor, degree: torch.Tensor) -> torch.Tensor:
    """DMoN's loss: negative modularity of the soft assignment plus the collapse regulariser."""
    n, k = assignment.shape
    two_m = degree.sum()
    inside = (assignment * torch.sparse.mm(adjacency, assignment)).sum()
    expected = (degree @ assignment).pow(2).sum() / two_m
    modularity = (inside - expected) / two_m
    collapse = math.sqrt(k) / n * torch.linalg.vector_norm(assignment.sum(dim=0)) - 1.0
    return -modularity + collapse


def train_graph_partition(features: np.ndarray, edges: np.ndarray, k: int, *, seed: int, epochs: int = 300,
                          learning_rate: float = 1e-3, hidden: int = 64) -> np.ndarray:
    """Soft assignment of every node to k clusters by a GNN trained on the modularity loss.

    Parameters
    ----------
    features : (n, d) float ndarray
        Node features (e.g. standardised tile embeddings).
    edges : (m, 2) int ndarray
        Undirected edges (i, j), each once; at least one.
    k : int
        Clusters (>= 2).
    seed : int
        Seeds the weights.
    epochs : int
        Full-batch Adam steps.

    Returns
    -------
    (n, k) float64 ndarray
        Rows sum to 1.
    """
    n = len(features)
    edges = np.asarray(edges, dtype=np.int64)
    both = np.concatenate([edges, edges[:, ::-1]])
    index = torch.from_numpy(both.T.copy())
    ones = torch.ones(len(both), dtype=torch.float32)
    adjacency = torch.sparse_coo_tensor(index, ones, (n, n), check_invariants=True).coalesce()
    degree = torch.sparse.sum(adjacency, dim=1).to_dense()
    scale = torch.where(degree > 0, degree.rsqrt(), torch.zeros_like(degree))
    values = scale[index[0]] * ones * scale[index[1]]
    normalised = torch.sparse_coo_tensor(index, values, (n, n), check_invariants=True).coalesce()

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = GraphPartitioner(features.shape[1], k, hidden=hidden)
    finally:
        torch.random.set_rng_state(generator_state)
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    threads = torch.get_num_threads()
    if n < SINGLE_THREAD_NODES:
        torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(epochs):
            optimiser.zero_grad()
            loss = modularity_loss(model(x, normalised), adjacency, degree)
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            assignment = model(x, normalised).double().numpy()
    finally:
        torch.set_num_threads(threads)
    return assignment / assignment.sum(axis=1, keepdims=True)
