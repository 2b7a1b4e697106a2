from pipeline.interfaces.reads import main

main()
