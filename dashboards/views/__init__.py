"""One module per dashboard view; each has `render(handle)`."""
