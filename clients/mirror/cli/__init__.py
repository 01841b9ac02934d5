"""`mirrorctl`: the operator command line of image-mirror (entry point `mirror.cli.main:main`)."""
