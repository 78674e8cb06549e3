"""Back end of the web application: jobs, uploads, training, video generation and the chat pipeline."""
