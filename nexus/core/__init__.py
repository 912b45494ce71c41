"""The shared routing core: imported by every process package, imports none of them."""
