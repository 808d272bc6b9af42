"""Ray Serve applications for the plain Serve CLI (`serve run`, `serve deploy`)."""
