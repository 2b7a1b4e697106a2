from pipeline.interfaces.program import main

main()
