"""The HTML report of a run or a sweep: `collect` finds the runs and reads their files, `plots`
draws the figures, `grids` the image grids, `html` writes the page."""

from synthshot.report.html import write_report

__all__ = ["write_report"]
