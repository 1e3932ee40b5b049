"""The probe initiator: a userspace iSCSI initiator (libiscsi via ctypes) that measures what an initiator sees.

Modules, bottom up:

* libiscsi.py  ctypes declarations only (structs checked against the installed headers by a test)
* sense.py     SCSI status / sense decoding to names (pure)
* session.py   one session: login with a deadline, ``execute(cdb, data_in_len | data_out)`` with a per-command
               timeout, READ/WRITE(16), INQUIRY, READ CAPACITY(16); reconnect = ``connect`` again
* blocks.py    the verifiable block format and the ledger of acknowledged writes (pure)
* report.py    frozen results, JSON, pause computation (pure)
* stop.py      stop file and signals
* io.py        the I/O engine behind ``hactl probe io`` (hacontrol/cli/probe.py)

Later probes (``probe vaai``: VPD pages, REPORT SUPPORTED OPERATION CODES, REPORT TARGET PORT GROUPS) build
their CDBs and call ``Session.execute``.
"""
