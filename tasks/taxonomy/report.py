"""Render a validation report as text, GitHub annotations or Markdown (the flow's artifact)."""

from __future__ import annotations

from labcycle.tasks.taxonomy.validate import ValidationReport


def summary(report: ValidationReport) -> str:
    invalid = sum(1 for f in report.files if not f.valid)
    errors = sum(len(f.errors) for f in report.files)
    warnings = sum(len(f.warnings) for f in report.files)
    return (
        f"{len(report.files)} file{'s' if len(report.files) != 1 else ''} checked: "
        f"{len(report.files) - invalid} valid, {invalid} invalid ({errors} error{'s' if errors != 1 else ''}, "
        f"{warnings} warning{'s' if warnings != 1 else ''})"
    )


def text_lines(report: ValidationReport) -> list[str]:
    lines = []
    for f in report.files:
        for p in f.errors:
            lines.append(f"{f.path}:{p.line}:{p.column}: {p.message} [{p.rule}]")
        for p in f.warnings:
            lines.append(f"{f.path}:{p.line}:{p.column}: warning: {p.message} [{p.rule}]")
    return lines


def _escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_prop(s: str) -> str:
    return _escape_data(s).replace(":", "%3A").replace(",", "%2C")


def github_lines(report: ValidationReport) -> list[str]:
    """GitHub Actions workflow commands: one ::error/::warning annotation per problem."""
    lines = []
    for f in report.files:
        for level, problems in (("error", f.errors), ("warning", f.warnings)):
            for p in problems:
                lines.append(
                    f"::{level} file={_escape_prop(f.path)},line={p.line},col={p.column},title={_escape_prop(p.rule)}::{_escape_data(p.message)}"
                )
    return lines


def markdown(report: ValidationReport) -> str:
    out = ["# Taxonomy validation", "", summary(report), ""]
    bad = [f for f in report.files if f.errors or f.warnings]
    if bad:
        out += ["| file | line:col | level | problem | rule |", "|---|---|---|---|---|"]
        for f in bad:
            for level, problems in (("error", f.errors), ("warning", f.warnings)):
                for p in problems:
                    msg = p.message.replace("|", "\\|")
                    out.append(f"| `{f.path}` | {p.line}:{p.column} | {level} | {msg} | `{p.rule}` |")
    return "\n".join(out) + "\n"
