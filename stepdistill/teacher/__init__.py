"""Rationale extraction: few-shot prompts, teachers (API, Batch API, local model, replay), the crash-safe generator.

Importing this package is cheap: torch/transformers load only when a local model is used, openai on first request.
"""

from .generator import (CacheError, GenerationResult, RationaleGenerator, Summary, attach_rationales, format_summary,
                        load_rationales, merge_caches, read_cache)
from .hf_teacher import HFTeacher
from .openai_batch import OpenAIBatchTeacher
from .prompts import PromptTemplate, load_template, template_for_task
from .synthesize import SynthesisSummary, SyntheticGenerator, format_synthesis_summary
from .teachers import GenerationParams, OpenAITeacher, ReplayTeacher, Reply, Teacher, TeacherFatalError, make_teacher

__all__ = [
    "CacheError", "GenerationParams", "GenerationResult", "HFTeacher", "OpenAIBatchTeacher", "OpenAITeacher",
    "PromptTemplate", "RationaleGenerator", "ReplayTeacher", "Reply", "Summary", "SynthesisSummary",
    "SyntheticGenerator", "Teacher", "TeacherFatalError", "format_synthesis_summary",
    "attach_rationales", "format_summary", "load_rationales", "load_template", "make_teacher", "merge_caches",
    "read_cache", "template_for_task",
]
