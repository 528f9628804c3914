"""What a reader sees: the comparison report (Markdown + self-contained HTML), its plots and routing pictures, the
verdict section, the exports (LaTeX, CSV), and `smoe show` for one run."""
