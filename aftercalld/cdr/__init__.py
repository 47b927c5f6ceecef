"""Backfill from the PBX's own call detail records (CDRs).

A call that ended while nobody listened (the daemon down, the PBX link lost) left no events
for a tracker, but the PBX still wrote its CDR. These modules read those rows, turn each
call's rows into the same protocol-neutral `CallFacts` the trackers build, and hand the
records to the same rules and outbox as live calls, marked ``source = "cdr"``:

* `asterisk`: Asterisk ``cdr_csv`` (``Master.csv``, 16 or 21 columns) and FreePBX's
  ``asteriskcdrdb.cdr`` rows;
* `freeswitch`: ``mod_cdr_csv`` files in the shipped ``example`` template;
* `sources`: where the rows come from (a CSV file read from a remembered position, or a
  MySQL/MariaDB table) — blocking reads run in a thread;
* `backfill`: when to read, what is too old to text, and the counts.
"""
