"""The HTTP server: OpenAI's speech API and RunPod's load-balancing mode (`python -m tts_runner.serve`)."""
