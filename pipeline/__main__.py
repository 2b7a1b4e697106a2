from pipeline.interfaces.cli import main

main()
