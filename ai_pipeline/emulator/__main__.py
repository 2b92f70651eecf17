"""``python -m ai_pipeline.emulator``: the same as ``ai-pipeline emulate``."""

from ai_pipeline.emulator.cli import main

if __name__ == "__main__":
    main()
