"""The public SDPA optimization case study, reproduced correctly: ``sdpalab reproduce case-study``."""

from sdpalab.casestudy.run import CaseStudyRun, run_case_study

__all__ = ["CaseStudyRun", "run_case_study"]
