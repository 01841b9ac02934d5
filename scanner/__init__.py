"""Scanner: turns an image into facts (components, licenses, OS, vulnerability counts)."""
