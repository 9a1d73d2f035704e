# pyinfra loads this file before it connects to any host: validate the inventory here so that
# a wrong inventory stops the run with one message and no host is contacted.
from pyinfra import state

from gpufleet.inventory import Preflight

state.add_callback_handler(Preflight())
