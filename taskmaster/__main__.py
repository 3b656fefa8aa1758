from taskmaster.cli.run import run_command

run_command(prog_name="python -m taskmaster")
