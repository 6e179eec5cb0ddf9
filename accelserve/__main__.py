from accelserve.cli.main import run

run()
