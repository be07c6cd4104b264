"""The sans-IO core: bytes in, response plans out. No sockets, threads or clocks here."""

from .app import FileApp, Request
from .connection import HttpConnection
from .docroot import Docroot, TargetError, normalise
from .limits import Limits
from .responses import FileSlice, ResponsePlan, WorkOrder
from .workload import cpu_kernel

__all__ = [
    "Docroot",
    "FileApp",
    "FileSlice",
    "HttpConnection",
    "Limits",
    "Request",
    "ResponsePlan",
    "TargetError",
    "WorkOrder",
    "cpu_kernel",
    "normalise",
]
