from runner.app import cli

cli()
