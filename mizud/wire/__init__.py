"""Front ends: protocols that turn bytes into API requests and answers into bytes."""
