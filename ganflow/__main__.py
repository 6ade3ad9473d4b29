from ganflow.cli import main

main()
