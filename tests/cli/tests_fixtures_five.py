"""A 5-class model for the teacher-mismatch test (importable as tests_fixtures_five:model)."""

import torch


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
