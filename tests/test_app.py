"""
Tests for what L{vss_dispatcher.app} does to the process once start-up is
over.
"""

from __future__ import annotations

import gc
import weakref

from twisted.trial.unittest import SynchronousTestCase

from vss_dispatcher.app import freeze_start_up


class FreezeStartUpTests(SynchronousTestCase):
    """
    L{freeze_start_up} hides start-up's objects from the garbage collector.
    """

    def setUp(self) -> None:
        self.addCleanup(gc.unfreeze)

    def test_live_objects_set_aside(self) -> None:
        """
        An object alive at the freeze is no longer in any generation the
        collector scans, while one made afterwards is.
        """
        before = Node()
        freeze_start_up()
        after = Node()

        self.assertGreater(gc.get_freeze_count(), 0)
        scanned = {id(item) for item in gc.get_objects()}
        self.assertNotIn(id(before), scanned)
        self.assertIn(id(after), scanned)

    def test_garbage_collected_first(self) -> None:
        """
        Garbage left when it runs is collected, not set aside with the rest.
        """
        gc.disable()
        self.addCleanup(gc.enable)
        cycle = Node()
        cycle.next = cycle
        gone = weakref.ref(cycle)
        del cycle
        self.assertIsNotNone(gone())

        freeze_start_up()

        self.assertIsNone(gone())


class Node:
    """
    Something that can refer to itself and be referred to weakly.
    """

    next: object = None
