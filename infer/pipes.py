"""The local engine's threads: a producer feeding the main thread (Pipe), and a consumer fed by it (Sink), each
handing its error to the main thread; and a preparation started after its hand-over (Later)."""
from __future__ import annotations

import queue
import threading


class Pipe:
    """Items made by a producer function in its own thread, iterated here in order (at most `depth` ahead).

    The producer gets emit(item) -> bool, False once the consumer has stopped; its error is raised here.
    """

    _END = object()

    def __init__(self, produce, *, name: str, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(produce,), name=name, daemon=True)
        self._thread.start()

    def _main(self, produce) -> None:
        try:
            produce(self._emit)
            self._emit(self._END)
        except BaseException as e:  # handed to the consumer
            self._emit(e)

    def _emit(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        """Stop the producer and wait for it: a daemon thread killed inside native tokenizer code at exit aborts
        the process, so it is let finish its chunk."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass


class Sink:
    """Items consumed in order by a function in its own thread; put() raises the consumer's error, if any.

    After an error nothing more is consumed, even once the error has been raised: the items put after the failed
    one are drained unread (a chunk written after a failed one would break the checkpoint's count of chunks done).
    """

    _END = object()

    def __init__(self, consume, *, name: str, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None  # not yet raised to the producer
        self.failed = False
        self._thread = threading.Thread(target=self._main, args=(consume,), name=name, daemon=True)
        self._thread.start()

    def _main(self, consume) -> None:
        while (item := self._queue.get()) is not self._END:
            if not self.failed:
                try:
                    consume(item)
                except BaseException as e:  # kept for the producer; later items are drained, not consumed
                    self.failed = True  # before the error is visible: the producer may clear it at once
                    self.error = e

    def put(self, item) -> None:
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Consume what was put, stop the thread, raise its error (once)."""
        if self._thread.is_alive():
            self._queue.put(self._END)
            self._thread.join()
        self._raise()

    def _raise(self) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise error


class Later:
    """A preparation that the producer starts after handing its item over: result() waits for it to be started,
    then for the started one's own result(); an error raised while starting it is raised there instead."""

    def __init__(self):
        self._started = threading.Event()
        self._pending = None
        self._error: BaseException | None = None

    def start(self, begin) -> None:
        """Run begin() (returning an object with result()) and let result() go on."""
        try:
            self._pending = begin()
        except BaseException as e:  # raised in the consumer, which waits on this item
            self._error = e
        finally:
            self._started.set()

    def result(self):
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self._pending.result()
