from clipsae.cli import main

main()
