"""Lost work found and started again: by lease (a worker died), by inspection (a message
was lost), and by beat's reconciler, which runs both without an operator."""
