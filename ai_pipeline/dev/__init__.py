"""Development tools, apart from the runtime: the Replicate emulator, the chaos suite, the demo and the
local stack they run on. The runtime never imports this package (an import contract in `make lint`
says so); its commands reach the `ai-pipeline` CLI by name (`ai_pipeline/cli.py`)."""
