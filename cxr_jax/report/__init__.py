"""Report building blocks: tables (CSV + Markdown) and figures (PNG)."""
