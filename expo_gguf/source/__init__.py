"""Reading the inputs: where a checkpoint is (a folder, or the Hugging Face cache), its safetensors
headers and row ranges (``checkpoint``), its tokenizer (``vocab``, ``vocab_bpe``), its chat
template (``chat_template``), and the published ExPO models (``presets``).

Everything here reads files someone else wrote and refuses a bad one in one ``ExpoError`` line.
May import: ``errors``, ``_data``, ``_fs``. Never the build, the runtime or the CLI.
"""
