"""What strings several steps together: the benchmark (methods x noise levels), its method registry, demo."""
