"""Shell recordings in asciicast v2, written to the blob store as they happen.

asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/) is one JSON
header line, then one ``[seconds, code, data]`` line per event: ``o`` output,
``i`` input, ``r`` resize (``COLSxROWS``). Any asciinema player replays it, and
so does ``tether sessions replay``. Written as it goes, so a crash loses at
most the event being written, and held in memory never.
"""

from __future__ import annotations

import codecs
import json
import time

from tether.server.blobs import BlobStore


def recording_key(session_id: str) -> str:
    return f"sessions/{session_id}.cast"


class Recorder:
    def __init__(self, blobs: BlobStore, key: str, cols: int, rows: int, term: str,
                 record_input: bool) -> None:
        self.blobs, self.key, self.record_input = blobs, key, record_input
        self.started = time.time()
        self._offset = 0
        # A multibyte character split across two frames is decoded whole.
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._in = codecs.getincrementaldecoder("utf-8")("replace")
        header = {"version": 2, "width": cols, "height": rows,
                  "timestamp": int(self.started), "env": {"TERM": term}}
        self._write(json.dumps(header) + "\n")

    def output(self, data: bytes) -> None:
        self._event("o", self._out.decode(data))

    def input(self, data: bytes) -> None:
        if self.record_input:
            self._event("i", self._in.decode(data))

    def resize(self, cols: int, rows: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def _event(self, code: str, text: str) -> None:
        if text:
            at = round(time.time() - self.started, 6)
            self._write(json.dumps([at, code, text], ensure_ascii=False) + "\n")

    def _write(self, line: str) -> None:
        data = line.encode("utf-8")
        self.blobs.write_at(self.key, self._offset, data)
        self._offset += len(data)
