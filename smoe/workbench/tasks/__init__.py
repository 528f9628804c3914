"""The task registry: each task names its data, its model builder, its loss and its metric, with presets.

The Trainer knows no task; `smoe train` (and `smoe compare`) look a task up here, resolve a `RunConfig` from a
preset plus overrides (`workbench.run.config`) and call `task.setup(run)` for the model, batches, loss and evaluation.
Adding a task is one `@register_task(name)` factory in the module of its family.

| task | data (smoe/data) | model | loss | metric |
|---|---|---|---|---|
| lm-bbc | BBC News, BPE token stream | MoE LM | next-token CE | perplexity vs unigram |
| text | any text file / folder, BPE | MoE LM | next-token CE | perplexity vs unigram |
| cls-bbc | BBC News topics, first tokens | MoE LM, classification head | CE | accuracy |
| digits | scikit-learn 8x8 digits, patches | V-MoE | CE | accuracy |
| mnist1d | MNIST-1D signals, 1-D patches | V-MoE | CE | accuracy |
| sketch-vae | generated stroke sketches 28x28 | SMoE-VAE | four VAE terms | SSE/image vs mean image |
"""

from smoe.workbench.tasks import sketch, text, vision  # noqa: F401  (registers the tasks)
from smoe.workbench.tasks.base import Task, TaskSetup, available_tasks, get_task, register_task

__all__ = ["Task", "TaskSetup", "available_tasks", "get_task", "register_task"]
