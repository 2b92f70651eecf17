"""``python -m ai_pipeline.dev.emulator``: the same as ``ai-pipeline emulate``."""

from ai_pipeline.dev.emulator.cli import main

if __name__ == "__main__":
    main()
