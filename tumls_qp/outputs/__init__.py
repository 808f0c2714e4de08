"""What tumls-qp writes for people and for QuPath: GeoJSON, QuPath projects, the PDF report."""
