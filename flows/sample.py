"""The DVC ``sample`` stage: ``python -m flows.sample`` (or ``faces sample``) writes the bundled
synthetic sample (both ingest formats, photos to annotate) from params.yaml ``sample``.

No Prefect flow: it only draws files (:mod:`faces_core.sample.settings`); the command line
is :mod:`faces_cli.sample`.
"""

if __name__ == "__main__":
    from faces_cli.sample import command

    raise SystemExit(command())
