"""The workbench: what runs experiments on the library (tasks, runs, the Trainer, comparisons, reports).

Data flows one way: the workbench imports the library (`smoe.routing`, `smoe.layer`, `smoe.models`, ...), never
the other way round. `smoe.cli` is the front door of both.
"""
