"""Example networks and the course labs' import paths."""
