from evalbox.faces.cli import main

main()
