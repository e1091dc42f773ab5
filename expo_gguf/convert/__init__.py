"""The build, the ``build`` command's stage: a pair converted into GGUF files. A frozen plan from the
headers alone (``plan``, with the GGUF names and hyper-parameters of ``mapping``), then one
streaming pass that executes it (``execute``): rows of both checkpoints read, widened and
extrapolated (``extrapolate``), quantized for every output and streamed into GGUF files
(``writer``), renamed only when every output is written and checked.

May import: ``source``, ``quant``, ``gguf_file`` (to read outputs back), ``runtime.options``,
``progress``, ``errors``, ``_fs``. The executor returns what it wrote; extras beside the files
(Ollama Modelfiles) are the command's business.
"""
