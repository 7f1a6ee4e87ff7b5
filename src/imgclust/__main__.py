from imgclust.cli import app

app()
