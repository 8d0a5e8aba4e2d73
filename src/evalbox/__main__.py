from evalbox.faces.cli import entry

entry()
