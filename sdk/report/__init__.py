"""Reports: the conversion report built in one place, and its Markdown, terminal and PNG views."""
