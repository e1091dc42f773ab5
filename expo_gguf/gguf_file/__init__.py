"""The GGUF file: a validating header walk that refuses a damaged or hostile file in one line
before gguf-py or llama.cpp sees it (``header``), what a file holds (``info``), and Ollama
Modelfiles for it (``modelfile``).

May import: ``errors``, ``_data``, ``_fs``. No llama.cpp, no rich: printing is the CLI's.
"""
