from hope.cli import main

main()
