"""
twistd plugins C{vss-dispatcher} and C{vss-emulator}.

Listing twistd's plugins imports this module, so it imports nothing heavy:
the service is built only when twistd asks for it.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _LazyServiceMaker:
    def __init__(self, tapname: str, description: str, module: str, options: str):
        self.tapname = tapname
        self.description = description
        self._module = module
        self._options = options

    @property
    def options(self) -> Any:
        from importlib import import_module

        return getattr(import_module("vss_dispatcher.options"), self._options)

    def makeService(self, options: Any) -> Any:
        from importlib import import_module

        return import_module(self._module).make_service(options)


dispatcher = _LazyServiceMaker(
    "vss-dispatcher",
    "Show display jobs from RabbitMQ through VSS, priority jobs first.",
    "vss_dispatcher.app",
    "DispatcherOptions",
)
emulator = _LazyServiceMaker(
    "vss-emulator",
    "A stand-in for VSS that records and shows what it is sent.",
    "vss_dispatcher.emulator",
    "EmulatorOptions",
)
