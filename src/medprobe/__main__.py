from medprobe.cli import main

main()
