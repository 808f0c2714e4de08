"""What a person steers: seeded clustering, prototype dictionaries, embedding colours."""
