"""CLI commands: evidence bundles. Attached to the ``audit`` group of :mod:`outreach.cli`.

Thin on purpose: :mod:`outreach.bundle` does the work, so a Python user can do exactly what
these commands do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from outreach import clock
from outreach.bundle import ExportError, export_case, verify_bundle
from outreach.cli import Ctx, audit, json_option
from outreach.output import emit


@audit.command("export")
@click.argument("case_ref", metavar="CASE")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Where to write the bundle (a .zip).",
)
@json_option
@click.pass_obj
def audit_export(c: Ctx, case_ref: str, output: Path, as_json: bool) -> None:
    """Write the evidence bundle of one CASE (its reference or config key) to a zip.

    \b
    The bundle holds this case only, and everything needed to check it without us:
      manifest.json, SHA256SUMS   SHA-256 of every file
      events.jsonl                the case's hash chain, exactly as stored
      blobs/                      the exact bytes sent and received (.eml, SMS requests,
                                  server replies, evidence files, rendered notices)
      anchors/NNNNNN/             per RFC 3161 timestamp: token.tsr, proof.json (this
                                  case's leaf and inclusion path), tsa.pem, ca.pem
      report.html                 printable timeline in Chinese and English
      VERIFY.md                   how to check it: `outreach audit verify-bundle`, and by
                                  hand with sha256sum and openssl ts -verify

    Exits 1 (writing nothing) when the case's chain, a cited file or a timestamp does not
    verify in the database: such a bundle would fail its own check.
    """
    app = c.app()
    if not output.parent.is_dir():
        click.echo(f"{output}: folder {output.parent} does not exist", err=True)
        sys.exit(2)
    ca = app.config.proof.tsa_ca_file
    roots = app.config.resolve_path(ca).read_bytes() if ca else None
    click.echo(f"exporting {case_ref} …", err=True)
    with app.sessions() as s:
        try:
            report = export_case(s, case_ref, output, trust_roots_pem=roots, now=clock.now())
        except LookupError as exc:
            click.echo(str(exc.args[0]), err=True)
            sys.exit(2)
        except ExportError as exc:
            click.echo(f"cannot export {case_ref}: {exc}", err=True)
            sys.exit(1)
    if as_json:
        emit(
            [
                {
                    "path": str(report.path),
                    "reference": report.reference,
                    "events": report.events,
                    "files": report.blobs,
                    "timestamps": report.anchors,
                    "timestamped_through": report.anchored_seq,
                    "bytes": report.bytes,
                    "notes": report.notes,
                }
            ],
            as_json=True,
        )
        return
    click.echo(
        f"wrote {report.path} ({report.bytes:,} bytes): case {report.reference}, "
        f"{report.events} events, {report.blobs} files, {report.anchors} timestamp(s)"
    )
    for note in report.notes:
        click.echo(f"note: {note}")
    click.echo(f"check it with: outreach audit verify-bundle {report.path}")


@audit.command("verify-bundle")
@click.argument(
    "bundle", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)
)
@json_option
def audit_verify_bundle(bundle: Path, as_json: bool) -> None:
    """Check an evidence bundle completely, offline: no database, no network, no config.

    \b
    Checks, stopping at the first problem (exit 1, naming it):
      - SHA256SUMS and manifest.json against every file; no unexpected files
      - the hash chain in events.jsonl, event by event, and its head
      - every file an event cites is present and has exactly the cited SHA-256
      - every timestamp: the leaf is this chain's event, the inclusion path leads to the
        root, the token covers the root and (when ca.pem is in the bundle) is signed by a
        TSA certificate under it
    """
    check = verify_bundle(bundle)
    if as_json:
        emit([check.as_dict()], as_json=True)
    elif check.problem is not None:
        click.echo(f"BROKEN {bundle}: {check.problem}")
    else:
        stamped = (
            f"; {check.anchors} timestamp(s), {check.signatures_checked} signature(s) checked, "
            f"events #1-#{check.anchored_seq} time-stamped by {check.anchored_at:%Y-%m-%d %H:%M:%S} UTC"
            if check.anchors and check.anchored_at
            else ""
        )
        click.echo(
            f"OK: {check.reference}: {check.events} events chained, {check.blobs} files match "
            f"their hashes{stamped}"
        )
    if not as_json:
        for note in check.notes:
            click.echo(f"note: {note}")
    if check.problem is not None:
        sys.exit(1)
