"""asvp/tasks: the task registry."""
from asvp.tasks import TASK_NAMES, TASKS


def test_task_registry_covers_the_paper():
    assert set(TASKS) == set(TASK_NAMES)
    assert TASKS["sr"].scale == 2 and TASKS["sr"].baseline == "bicubic"
