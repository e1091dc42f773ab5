"""``expo-gguf serve``: our own HTTP server over one loaded ``ChatModel`` (Starlette on uvicorn).

``openai`` checks requests and shapes responses (OpenAI's chat-completions protocol, strictly);
``keep`` keeps every conversation in the store; ``app`` holds the routes and the one worker
thread that answers requests in order; ``page`` hands out the chat page's files; ``run`` binds
the socket, loads the model and runs uvicorn until Ctrl+C. ``openai`` and ``keep`` import
neither llama.cpp nor click. May import ``runtime``, ``gguf_file`` and the rest of ``chat``.
"""
